"""The API's resources: one class per collection, suffixed responders for the sub-routes."""
