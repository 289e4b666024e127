from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlmodel import select

from ...core.config import settings
from ...core.security import create_access_token, verify_password
from ...models import LoginRequest, Token, User, UserPublic
from ..deps import CurrentUser, SessionDep

router = APIRouter(tags=["login"])


@router.post("/login/access-token")
def login_access_token(session: SessionDep, body: LoginRequest) -> Token:
    user = session.exec(select(User).where(User.email == body.email)).first()
    if user is None or not verify_password(body.password, user.hashed_password):
        raise HTTPException(status_code=400, detail="Incorrect email or password")
    if not user.is_active:
        raise HTTPException(status_code=400, detail="Inactive user")
    assert user.id is not None
    return Token(access_token=create_access_token(user.id,
                                                  settings.ACCESS_TOKEN_EXPIRE_MINUTES))


@router.post("/login/test-token", response_model=UserPublic)
def test_token(current_user: CurrentUser) -> User:
    return current_user
