from __future__ import annotations

from sqlalchemy import create_engine
from sqlmodel import Session, SQLModel, select

from .config import settings
from .security import get_password_hash

engine = create_engine(settings.DATABASE_URL.replace("postgresql://", "postgresql+psycopg://"),
                       pool_size=10, max_overflow=10, pool_pre_ping=True)

SEED_USERS = 60
SEED_ITEMS = 3000


def user_email(n: int) -> str:
    return f"user{n}@example.com"


SEED_PASSWORD = "seed-password"


def init_db(session: Session) -> None:
    """Tables and the first rows, as the template's prestart step does (idempotent)."""
    from ..models import Item, User

    SQLModel.metadata.create_all(engine)
    if session.exec(select(User).limit(1)).first() is not None:
        return
    session.add(User(email=settings.FIRST_SUPERUSER, is_superuser=True, full_name="Admin",
                     hashed_password=get_password_hash(settings.FIRST_SUPERUSER_PASSWORD)))
    # One hash for every seeded user: argon2 takes tens of ms per hash, by design.
    seed_hash = get_password_hash(SEED_PASSWORD)
    users = [User(email=user_email(n), full_name=f"User {n}", hashed_password=seed_hash)
             for n in range(1, SEED_USERS + 1)]
    session.add_all(users)
    session.flush()
    session.add_all(Item(title=f"Item {n}", description=f"Description of item {n}",
                         owner_id=users[n % SEED_USERS].id) for n in range(1, SEED_ITEMS + 1))
    session.commit()
