from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlmodel import func, select

from ...core.security import get_password_hash
from ...models import User, UserCreate, UserPublic, UsersPublic
from ..deps import CurrentUser, SessionDep

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/", response_model=UsersPublic)
def read_users(session: SessionDep, current_user: CurrentUser, skip: int = 0,
               limit: int = 100) -> UsersPublic:
    count = session.exec(select(func.count()).select_from(User)).one()
    users = session.exec(select(User).order_by(User.id).offset(skip).limit(limit)).all()
    return UsersPublic(data=[UserPublic.model_validate(u) for u in users], count=count)


@router.get("/me", response_model=UserPublic)
def read_user_me(current_user: CurrentUser) -> User:
    return current_user


@router.get("/{user_id}", response_model=UserPublic)
def read_user_by_id(user_id: int, session: SessionDep, current_user: CurrentUser) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise HTTPException(status_code=404, detail="User not found")
    return user


@router.post("/signup", response_model=UserPublic, status_code=201)
def register_user(session: SessionDep, user_in: UserCreate) -> User:
    if session.exec(select(User).where(User.email == user_in.email)).first() is not None:
        raise HTTPException(status_code=400, detail="The user already exists")
    user = User.model_validate(user_in, update={
        "hashed_password": get_password_hash(user_in.password)})
    session.add(user)
    session.commit()
    session.refresh(user)
    return user
