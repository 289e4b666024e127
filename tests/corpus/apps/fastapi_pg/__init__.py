"""A FastAPI backend shaped like the popular full-stack template: SQLModel on psycopg 3."""
