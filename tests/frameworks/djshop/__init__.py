"""A tiny Django shop served over ASGI: function and class-based views, sync and async, an
`include()` prefix, a `re_path`, and one view with an N+1 loop over the ORM."""
