"""The shop's tables and its asyncio engine on asyncpg, as async SQLAlchemy 2 services set it up."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import Depends
from sqlalchemy import ForeignKey, String, func
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SEED_CUSTOMERS = 200
SEED_PRODUCTS = 500
SEED_ORDERS = 4000


def database_url() -> str:
    url = os.environ.get("DATABASE_URL", "postgresql://localhost/shop")
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


engine = create_async_engine(database_url(), pool_size=10, max_overflow=5)
Session = async_sessionmaker(engine, expire_on_commit=False)


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customer"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    email: Mapped[str] = mapped_column(String(120), unique=True)


class Product(Base):
    __tablename__ = "product"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(120))
    price_cents: Mapped[int]
    stock: Mapped[int]


class Order(Base):
    __tablename__ = "shop_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customer.id"), index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("product.id"))
    quantity: Mapped[int]
    total_cents: Mapped[int]
    created: Mapped[datetime] = mapped_column(server_default=func.now())


async def session() -> AsyncIterator[AsyncSession]:
    async with Session() as s:
        yield s


SessionDep = Annotated[AsyncSession, Depends(session)]
