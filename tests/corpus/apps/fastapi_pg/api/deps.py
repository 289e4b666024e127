from __future__ import annotations

from collections.abc import Generator
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from ..core.db import engine
from ..core.security import read_access_token
from ..models import User

bearer = HTTPBearer()


def get_db() -> Generator[Session, None, None]:
    with Session(engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]
TokenDep = Annotated[HTTPAuthorizationCredentials, Depends(bearer)]


def get_current_user(session: SessionDep, credentials: TokenDep) -> User:
    user_id = read_access_token(credentials.credentials)
    user = session.get(User, user_id) if user_id is not None else None
    if user is None or not user.is_active:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Could not validate credentials")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]
