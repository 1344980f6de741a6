"""Tutorials and each user's progress in them."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

from api.deps import Reader, SessionDep, Writer
from api.errors import ApiError, error_responses, not_found
from api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, Page, paginate
from api.schemas import ProgressIn, ProgressOut, TutorialOut
from database.models import Tutorial, UserTutorialProgress

router = APIRouter(prefix="/tutorials", tags=["tutorials"])


@router.get(
    "",
    response_model=Page[TutorialOut],
    responses=error_responses(401, 403, 422),
    summary="Published tutorials in their order, with the caller's progress",
)
def list_tutorials(
    principal: Reader,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[TutorialOut]:
    """Every published tutorial, in the order to take them, with the caller's progress in each
    (null: not started). Keyset pagination on the order."""
    rows, next_cursor = paginate(
        session,
        select(Tutorial).where(Tutorial.is_published.is_(True)),
        Tutorial.sort_order,  # ix_tutorials_sort_order
        Tutorial.id,
        limit=limit,
        cursor=cursor,
        descending=False,
        kind=int,
    )
    progress = {
        p.tutorial_id: p
        for p in session.scalars(
            select(UserTutorialProgress).where(
                UserTutorialProgress.user_id == principal.user_id,
                UserTutorialProgress.tutorial_id.in_([t.id for t in rows]),
            )
        )
    }
    items = []
    for t in rows:
        fields = {f: getattr(t, f) for f in TutorialOut.model_fields if f != "progress"}
        mine = progress.get(t.id)
        fields["progress"] = ProgressOut.model_validate(mine) if mine is not None else None
        items.append(TutorialOut.model_validate(fields))
    return Page[TutorialOut](items=items, next_cursor=next_cursor)


@router.put(
    "/{tutorial_id}/progress",
    response_model=ProgressOut,
    responses=error_responses(401, 403, 404, 422),
    summary="Record the caller's progress in a tutorial",
)
def set_progress(
    principal: Writer, session: SessionDep, tutorial_id: uuid.UUID, body: ProgressIn
) -> ProgressOut:
    """Replaces the caller's progress. Steps are numbered from 0 and must exist;
    ``is_completed`` stamps ``completed_at`` (kept on later updates while still
    completed)."""
    tutorial = session.scalars(
        select(Tutorial).where(Tutorial.id == tutorial_id, Tutorial.is_published.is_(True))
    ).one_or_none()
    if tutorial is None:
        raise not_found("tutorial")
    count = len(tutorial.steps)
    steps = sorted(set(body.completed_steps))
    beyond = [s for s in (*steps, body.current_step) if s >= max(count, 1)]
    if beyond:
        raise ApiError(
            422,
            "invalid_step",
            f"the tutorial has {count} steps (numbered from 0)",
            {"steps": count, "invalid": sorted(set(beyond))},
        )
    values = insert(UserTutorialProgress).values(
        user_id=principal.user_id,
        tutorial_id=tutorial.id,
        current_step=body.current_step,
        completed_steps=steps,
        is_completed=body.is_completed,
        completed_at=func.now() if body.is_completed else None,
    )
    stmt = values.on_conflict_do_update(
        index_elements=["user_id", "tutorial_id"],
        set_={
            "current_step": values.excluded.current_step,
            "completed_steps": values.excluded.completed_steps,
            "is_completed": values.excluded.is_completed,
            # The first completion's time stays while the tutorial stays completed.
            "completed_at": func.coalesce(
                UserTutorialProgress.completed_at, values.excluded.completed_at
            )
            if body.is_completed
            else None,
        },
    ).returning(UserTutorialProgress)
    row = session.scalars(stmt, execution_options={"populate_existing": True}).one()
    session.commit()
    return ProgressOut.model_validate(row)
