"""Accounts: registration, sign-in, e-mail verification, password reset, token pairs for /api.

Each account links to its FHIR resource (Patient for patients, Practitioner for staff), which
becomes the `fhirUser` claim. Nothing here knows about HTTP; failures raise `AccountError`.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth import passwords, policy, recent, tokens
from vitasync_fhir.auth import scopes as smart
from vitasync_fhir.auth.tables import account_tokens, refresh_tokens, users
from vitasync_fhir.config import Settings
from vitasync_fhir.db import after_commit, mark_written

log = logging.getLogger("vitasync_fhir.auth")

VERIFY = "verify-email"
RESET = "reset-password"
LINK_INTERVAL = timedelta(minutes=5)  # at most one reset or confirmation e-mail per account


class AccountError(Exception):
    """A refused account action. `keep` marks errors whose side effects (a revoked token family)
    must be committed: the route answers them instead of raising, so the transaction commits."""

    def __init__(self, status: int, message: str, *, keep: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.keep = keep


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    role: str
    verified: bool
    active: bool
    fhir_type: str | None
    fhir_id: str | None
    password_hash: str

    @property
    def fhir_user(self) -> str | None:
        return f"{self.fhir_type}/{self.fhir_id}" if self.fhir_type and self.fhir_id else None

    @property
    def patient_id(self) -> str | None:
        return self.fhir_id if self.role == "patient" else None

    def public(self) -> dict:
        return {
            "id": self.id,
            "email": self.email,
            "role": self.role,
            "verified": self.verified,
            "fhirUser": self.fhir_user,
            "patient": self.patient_id,
        }


def normal_email(email: str) -> str:
    """The address in lower case; 422 unless it is one plain address e-mail can be sent to."""
    from vitasync_fhir.notify.outbox import address_of

    value = email.strip().lower()
    local, at, domain = value.partition("@")
    if not local or not at or "." not in domain or " " in value or len(value) > 320:
        raise AccountError(422, "The e-mail address is not valid")
    if address_of(value) != value:
        raise AccountError(422, "The e-mail address is not valid")
    return value


def _now() -> datetime:
    return datetime.now(UTC)


def _user(row: object) -> User:
    return User(
        row.id,
        row.email,
        row.role,
        row.verified,
        row.active,
        row.fhir_type,
        row.fhir_id,
        row.password_hash,
    )


async def get_user(session: AsyncSession, user_id: str) -> User | None:
    row = (await session.execute(select(users).where(users.c.id == user_id))).first()
    return _user(row) if row else None


async def find_by_email(session: AsyncSession, email: str) -> User | None:
    row = (
        await session.execute(select(users).where(users.c.email == email.strip().lower()))
    ).first()
    return _user(row) if row else None


# -- creating accounts --------------------------------------------------------------------------


def _resource_for(role: str, *, given: str | None, family: str | None, email: str) -> dict:
    resource_type = "Patient" if role == "patient" else "Practitioner"
    resource: dict = {
        "resourceType": resource_type,
        "active": True,
        "telecom": [{"system": "email", "value": email}],
    }
    name: dict = {}
    if family:
        name["family"] = family
    if given:
        name["given"] = [given]
    if name:
        resource["name"] = [name]
    return resource


async def create_user(
    session: AsyncSession,
    *,
    email: str,
    password: str,
    role: str,
    verified: bool,
    given: str | None = None,
    family: str | None = None,
    fhir_id: str | None = None,
) -> User:
    """An account and, unless `fhir_id` links an existing one, its Patient or Practitioner."""
    from vitasync_fhir.fhir.service import Resources  # the FHIR service imports search on load

    if role not in policy.ROLES:
        raise AccountError(422, f"The role must be one of {', '.join(policy.ROLES)}")
    address = normal_email(email)
    problem = passwords.password_problem(password)
    if problem:
        raise AccountError(422, problem)
    if await find_by_email(session, address) is not None:
        raise AccountError(409, "An account with this e-mail address exists")
    fhir_type = "Patient" if role == "patient" else "Practitioner"
    if fhir_id is None:
        resource = _resource_for(role, given=given, family=family, email=address)
        saved = await Resources(session).create(fhir_type, resource)
        fhir_id = saved.version.id
    else:
        await Resources(session).read(fhir_type, fhir_id)
    user = User(
        str(uuid.uuid4()),
        address,
        role,
        verified,
        True,
        fhir_type,
        fhir_id,
        passwords.hash_password(password),
    )
    try:
        await session.execute(
            users.insert().values(
                id=user.id,
                email=user.email,
                password_hash=user.password_hash,
                role=role,
                verified=verified,
                active=True,
                fhir_type=fhir_type,
                fhir_id=fhir_id,
                created_at=_now(),
                tokens_valid_after=None,
            )
        )
    except IntegrityError:
        raise AccountError(409, "An account with this e-mail address exists") from None
    mark_written(session)
    return user


async def register(
    session: AsyncSession,
    settings: Settings,
    *,
    email: str,
    password: str,
    given: str | None,
    family: str | None,
) -> User | None:
    """A patient signs up: an unverified account, its Patient, and the verification e-mail.

    An address that has an account already is told so by e-mail, and None comes back: the caller
    answers both alike, so that signing up does not tell a stranger who has an account here.
    """
    problem = passwords.password_problem(password)
    if problem:
        raise AccountError(422, problem)
    existing = await find_by_email(session, normal_email(email))
    if existing is not None:
        passwords.hash_password(password)  # the work a new account costs: no tell in the timing
        if not existing.verified:  # its first link may have expired: the owner gets a new one
            await _send_confirmation(session, settings, existing, given)
            return None
        day = _now().date().isoformat()  # one such e-mail a day, however often it is tried
        await _send(
            session, settings, "account-exists", existing, {}, dedup=f"exists:{existing.id}:{day}"
        )
        return None
    user = await create_user(
        session,
        email=email,
        password=password,
        role="patient",
        verified=False,
        given=given,
        family=family,
    )
    await _send_confirmation(session, settings, user, given)
    return user


async def _send_confirmation(
    session: AsyncSession, settings: Settings, user: User, given: str | None
) -> None:
    """The registration e-mail with a link to confirm the address (one per LINK_INTERVAL)."""
    if await _recently_sent(session, settings, user.id, VERIFY):
        return
    token, expires = await _account_token(session, settings, user.id, VERIFY)
    context = {
        "verify_url": email_link(settings, VERIFY, token),
        "verify_expires": expires.isoformat(),
        "name": given or "",
    }
    dedup = f"registration:{user.id}:{tokens.digest(token)[:16]}"
    await _send(session, settings, "registration", user, context, dedup=dedup)


def email_link(settings: Settings, purpose: str, token: str) -> str:
    """The link an e-mail carries: the frontend's page when one is configured, else this server's
    own page under /account (auth.account_pages), which a browser opens without any app."""
    if settings.email_link_url:
        return f"{settings.email_link_url.rstrip('/')}/{purpose}?token={token}"
    return f"{settings.base_url.rstrip('/')}/account/{purpose}?token={token}"


async def _send(
    session: AsyncSession, settings: Settings, kind: str, user: User, context: dict, *, dedup: str
) -> None:
    """Queue the e-mail in this transaction (notify's outbox): sent only if the change commits."""
    from vitasync_fhir.notify.outbox import enqueue

    await enqueue(
        session, kind=kind, to=user.email, context=context, dedup_key=dedup, settings=settings
    )


# -- links sent by e-mail -----------------------------------------------------------------------


async def _account_token(
    session: AsyncSession, settings: Settings, user_id: str, purpose: str
) -> tuple[str, datetime]:
    token = tokens.random_token()
    expires = _now() + timedelta(seconds=settings.account_token_seconds)
    await session.execute(
        account_tokens.insert().values(
            token_hash=tokens.digest(token),
            user_id=user_id,
            purpose=purpose,
            expires_at=expires,
            used_at=None,
        )
    )
    mark_written(session)
    return token, expires


async def _use_account_token(session: AsyncSession, token: str, purpose: str) -> str:
    """The user id the link was made for; it cannot be used again."""
    found = (
        await session.execute(
            select(account_tokens).where(account_tokens.c.token_hash == tokens.digest(token))
        )
    ).first()
    if found is None or found.purpose != purpose or found.used_at is not None:
        raise AccountError(400, "The link is not valid or was already used")
    expires = found.expires_at if found.expires_at.tzinfo else found.expires_at.replace(tzinfo=UTC)
    if expires < _now():
        raise AccountError(400, "The link has expired")
    claimed = await session.execute(
        update(account_tokens)
        .where(account_tokens.c.token_hash == found.token_hash, account_tokens.c.used_at.is_(None))
        .values(used_at=_now())
    )
    if claimed.rowcount != 1:
        raise AccountError(400, "The link is not valid or was already used")
    mark_written(session)
    return found.user_id


async def verify_email(session: AsyncSession, token: str) -> User:
    user_id = await _use_account_token(session, token, VERIFY)
    await session.execute(update(users).where(users.c.id == user_id).values(verified=True))
    user = await get_user(session, user_id)
    assert user is not None
    return user


async def request_password_reset(session: AsyncSession, settings: Settings, *, email: str) -> None:
    """Send a reset link if the account exists; say nothing either way."""
    user = await find_by_email(session, email)
    if user is None or not user.active or await _recently_sent(session, settings, user.id, RESET):
        return
    token, expires = await _account_token(session, settings, user.id, RESET)
    # The page asks for the new password and posts it to /password-reset/confirm.
    context = {
        "reset_url": email_link(settings, RESET, token),
        "reset_expires": expires.isoformat(),
    }
    await _send(
        session,
        settings,
        "password-reset",
        user,
        context,
        dedup=f"password-reset:{tokens.digest(token)[:32]}",
    )


async def _recently_sent(
    session: AsyncSession, settings: Settings, user_id: str, purpose: str
) -> bool:
    """Whether a link of `purpose` went to the account in the last LINK_INTERVAL and is unused:
    asking again sends no second one, so a stranger cannot flood someone's mailbox."""
    newest = _now() + timedelta(seconds=settings.account_token_seconds) - LINK_INTERVAL
    found = await session.execute(
        select(account_tokens.c.token_hash).where(
            account_tokens.c.user_id == user_id,
            account_tokens.c.purpose == purpose,
            account_tokens.c.used_at.is_(None),
            account_tokens.c.expires_at > max(newest, _now()),  # an expired link is none
        )
    )
    return found.first() is not None


async def reset_password(session: AsyncSession, *, token: str, password: str) -> None:
    problem = passwords.password_problem(password)
    if problem:
        raise AccountError(422, problem)
    user_id = await _use_account_token(session, token, RESET)
    await session.execute(
        update(users)
        .where(users.c.id == user_id)
        .values(
            password_hash=passwords.hash_password(password),
            tokens_valid_after=_now(),
            verified=True,  # the link reached this address: it is the owner's
        )
    )
    # Every other link sent to the account dies with the old password: a reset e-mail found
    # later in a mailbox must not take the account over.
    await session.execute(
        update(account_tokens)
        .where(account_tokens.c.user_id == user_id, account_tokens.c.used_at.is_(None))
        .values(used_at=_now())
    )
    after_commit(session, recent.forget_all)
    await revoke_refresh_tokens(session, user_id=user_id)


# -- sign-in and tokens for the first-party frontend --------------------------------------------


def login_scope(user: User) -> str:
    """The frontend acts for the user with everything the role allows."""
    granted = smart.intersect(
        (smart.Scope("user", "*", "cruds"),), policy.ceiling(user.role, ["user"])
    )
    return " ".join([*(str(s) for s in granted), "fhirUser"])


async def issue_pair(
    session: AsyncSession,
    settings: Settings,
    user: User,
    *,
    scope: str,
    client_id: str | None = None,
    patient_id: str | None = None,
    family: str | None = None,
    with_refresh: bool = True,
) -> dict:
    """An access token, and a refresh token stored by digest."""
    patient = user.patient_id or patient_id
    issued = tokens.issue_access_token(
        settings,
        subject=user.id,
        scope=scope,
        client_id=client_id,
        fhir_user=user.fhir_user,
        patient=patient,
    )
    answer: dict = {
        "access_token": issued.token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": scope,
    }
    if patient:
        answer["patient"] = patient
    if with_refresh:
        refresh = tokens.random_token()
        await session.execute(
            refresh_tokens.insert().values(
                token_hash=tokens.digest(refresh),
                family=family or str(uuid.uuid4()),
                client_id=client_id,
                user_id=user.id,
                scope=scope,
                patient_id=patient_id,
                access_jti=issued.jti,
                created_at=_now(),
                expires_at=_now() + timedelta(seconds=settings.refresh_token_seconds),
                revoked_at=None,
            )
        )
        mark_written(session)
        answer["refresh_token"] = refresh
    answer["_jti"] = issued.jti
    return answer


async def use_refresh_token(
    session: AsyncSession, settings: Settings, token: str, *, client_id: str | None
) -> object:
    """The stored row of a live refresh token, now revoked (rotation). Replaying a rotated token
    revokes its whole family: someone holds a copy."""
    row = (
        await session.execute(
            select(refresh_tokens).where(refresh_tokens.c.token_hash == tokens.digest(token))
        )
    ).first()
    if row is None or row.client_id != client_id:
        raise AccountError(400, "The refresh token is not valid")
    if row.revoked_at is not None:
        await revoke_family(session, settings, row.family)
        raise AccountError(400, "The refresh token was already used or revoked", keep=True)
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    if expires < _now():
        raise AccountError(400, "The refresh token has expired")
    claimed = await session.execute(
        update(refresh_tokens)
        .where(refresh_tokens.c.token_hash == row.token_hash, refresh_tokens.c.revoked_at.is_(None))
        .values(revoked_at=_now())
    )
    if claimed.rowcount != 1:
        raise AccountError(400, "The refresh token was already used or revoked")
    mark_written(session)
    return row


async def revoke_refresh_tokens(
    session: AsyncSession,
    *,
    family: str | None = None,
    user_id: str | None = None,
    token: str | None = None,
) -> int:
    statement = update(refresh_tokens).where(refresh_tokens.c.revoked_at.is_(None))
    if family is not None:
        statement = statement.where(refresh_tokens.c.family == family)
    if user_id is not None:
        statement = statement.where(refresh_tokens.c.user_id == user_id)
    if token is not None:
        statement = statement.where(refresh_tokens.c.token_hash == tokens.digest(token))
    result = await session.execute(statement.values(revoked_at=_now()))
    mark_written(session)
    return result.rowcount or 0


async def revoke_family(session: AsyncSession, settings: Settings, family: str) -> None:
    """Revoke every refresh token of a family and the access tokens issued with them."""
    rows = await session.execute(
        select(refresh_tokens.c.access_jti).where(refresh_tokens.c.family == family)
    )
    until = int(_now().timestamp()) + settings.access_token_seconds
    for (jti,) in rows.all():
        if jti:
            await tokens.revoke(session, jti, until)
    await revoke_refresh_tokens(session, family=family)


async def refresh_login(session: AsyncSession, settings: Settings, token: str) -> dict:
    row = await use_refresh_token(session, settings, token, client_id=None)
    user = await get_user(session, row.user_id)
    if user is None or not user.active:
        raise AccountError(400, "The refresh token is not valid")
    return await issue_pair(session, settings, user, scope=login_scope(user), family=row.family)


async def list_users(session: AsyncSession) -> list[User]:
    rows = await session.execute(select(users).order_by(users.c.email))
    return [_user(row) for row in rows]
