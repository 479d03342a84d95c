"""Photos attached to a case (the reporter's, the handler's evidence), stored once by content hash.

A file is kept as ``ROOT/ab/abcdef….ext`` where ``abcdef…`` is its SHA-256, so the same photo sent
twice is stored once; the row in ``case_attachments`` and a log entry (``attach``) record it on the
case. The type is read from the bytes themselves (a name or a declared type can lie); only images
are taken, and only up to :data:`MAX_BYTES`.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.errors import PayloadTooLargeError, UserError

from cases.lifecycle import now_utc
from cases.model import get_case, write_event

MAX_BYTES = 10 * 1024 * 1024
#: leading bytes → (media type, file extension)
_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", "image/png", ".png"),
    (b"GIF87a", "image/gif", ".gif"),
    (b"GIF89a", "image/gif", ".gif"),
)


class UnsupportedMediaTypeError(UserError):
    """The attachment is not an image type the platform takes."""

    status = 415
    title = "Unsupported media type"


@dataclass(frozen=True)
class Attachment:
    id: int
    case_id: int
    content_hash: str
    media_type: str
    size_bytes: int
    path: str


def default_root() -> Path:
    """Where photos are kept unless a caller says: the deployment setting ``CIM_CASE_ATTACHMENTS``, or
    ``case-attachments`` under ``CIM_HOME``."""
    from cim.config import cim_home, settings

    return settings().case_attachments or cim_home() / "case-attachments"


def sniff(content: bytes) -> tuple[str, str]:
    """(media type, extension) of an image, from its first bytes."""
    for magic, media_type, ext in _SIGNATURES:
        if content.startswith(magic):
            return media_type, ext
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return "image/webp", ".webp"
    raise UnsupportedMediaTypeError("attachment: not a JPEG, PNG, GIF or WebP image")


def add_attachment(conn: Connection, case_id: int, content: bytes, root: Path, actor: str, role: str,
                   max_bytes: int = MAX_BYTES, now: datetime | None = None) -> Attachment:
    """Store ``content`` under ``root`` by its hash and attach it to the case (logged)."""
    if len(content) > max_bytes:
        raise PayloadTooLargeError(f"attachment: {len(content):,} bytes, at most {max_bytes:,}")
    media_type, ext = sniff(content)
    case = get_case(conn, case_id, lock=True)
    digest = hashlib.sha256(content).hexdigest()
    target = root / digest[:2] / f"{digest}{ext}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # write then rename: a reader never sees half a file, two writers of one photo agree
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            tmp.write(content)
        os.replace(tmp.name, target)
    relative = str(target.relative_to(root))
    event_id = write_event(conn, case.id, now or now_utc(), actor, role, "attach", case.status, case.status,
                           None, {"content_hash": digest, "media_type": media_type, "size_bytes": len(content)},
                           district=case.district)
    att_id = conn.execute(sa.text(
        "INSERT INTO case_attachments (case_id, event_id, content_hash, media_type, size_bytes, path) "
        "VALUES (:c, :e, :h, :m, :s, :p) RETURNING id"),
        {"c": case.id, "e": event_id, "h": digest, "m": media_type, "s": len(content), "p": relative}).scalar_one()
    return Attachment(att_id, case.id, digest, media_type, len(content), relative)


def attachments_of(conn: Connection, case_id: int) -> list[Attachment]:
    rows = conn.execute(sa.text("SELECT id, case_id, content_hash, media_type, size_bytes, path "
                                "FROM case_attachments WHERE case_id = :c ORDER BY id"), {"c": case_id})
    return [Attachment(**r._asdict()) for r in rows]
