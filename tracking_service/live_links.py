"""The live-link use cases: a run's owner creates, lists and revokes links (each a signed token, with an
optional webhook); a link's holder is told whether the link still grants its run; the run's stop
reaches the live state, its watchers and its links' webhooks. Plain values in and out; the servicer
converts."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass

from runtrack_common.config import Settings
from runtrack_common.errors import FailedPrecondition, NotFound, PermissionDenied
from runtrack_common.identity import Caller, LinkHolder
from tracking_service.hub import LiveHub, link_refused
from tracking_service.links import LinkSigner, new_link_id, new_webhook_secret
from tracking_service.live import ENDED, STOPPED, LinkRecord, LiveRow
from tracking_service.store import TrackStore

log = logging.getLogger(__name__)
MAX_LINKS_PER_RUN = 20


@dataclass(frozen=True, slots=True)
class NewLink:
    row: LiveRow  # the run's live row when the link was made
    link: LinkRecord
    token: str
    url: str  # the page's address that follows the run with the token


async def owned(store: TrackStore, caller: Caller, run_id: uuid.UUID) -> None:
    """The caller's run, or NOT_FOUND (as for the cursor, someone else's run is not revealed)."""
    if await store.run_owner(run_id) != caller.user_id:
        raise NotFound(f"run_id: no track for run {run_id}", metadata={"run_id": str(run_id)})


class LiveLinks:
    def __init__(self, store: TrackStore, hub: LiveHub, signer: LinkSigner, settings: Settings) -> None:
        self.store, self.hub, self.signer, self.settings = store, hub, signer, settings

    async def create(
        self, caller: Caller, run_id: uuid.UUID, expire_at: dt.datetime | None, webhook_url: str, now: dt.datetime
    ) -> NewLink:
        """A new link on the caller's run (the request already checked: expiry, webhook target)."""
        await owned(self.store, caller, run_id)
        row = await self.hub.store.live_row(run_id)
        if len(row.links) >= MAX_LINKS_PER_RUN:
            raise FailedPrecondition(
                f"run_id: a run has at most {MAX_LINKS_PER_RUN} live links; revoke one first", reason="TOO_MANY_LINKS"
            )
        secret = new_webhook_secret() if webhook_url else ""
        link = LinkRecord(new_link_id(), now, expire_at, webhook_url, secret)
        token = self.signer.token(str(run_id), link.link_id, now, expire_at)
        await self.hub.store.add_link(run_id, link)
        origin = (self.settings.public_origin or f"http://{self.settings.api_address}").rstrip("/")
        log.info("live link created run_id=%s link_id=%s webhook=%s", run_id, link.link_id, bool(webhook_url))
        return NewLink(row, link, token, f"{origin}/#live={token}")

    async def list(self, caller: Caller, run_id: uuid.UUID) -> tuple[LiveRow, list[LinkRecord]]:
        """The caller's run's links, oldest first."""
        await owned(self.store, caller, run_id)
        row = await self.hub.store.live_row(run_id)
        return row, sorted(row.links.values(), key=lambda link: (link.created_at, link.link_id))

    async def revoke(self, caller: Caller, run_id: uuid.UUID, link_id: str) -> None:
        """The link gone: its open watches on this replica end at once, elsewhere within a state poll."""
        await owned(self.store, caller, run_id)
        row = await self.hub.store.live_row(run_id)
        if link_id not in row.links:
            raise NotFound(f"link_id: run {run_id} has no live link {link_id!r}", reason="NO_SUCH_LINK")
        await self.hub.store.delete_link(run_id, link_id)
        self.hub.revoke(run_id, link_id)
        await self.hub.announce(run_id, "LINK_REVOKED")
        log.info("live link revoked run_id=%s link_id=%s", run_id, link_id)

    async def stands(self, holder: LinkHolder, run_id: uuid.UUID) -> None:
        """Raises unless the holder's live link grants this run and still stands."""
        if holder.run_id != str(run_id):
            raise PermissionDenied(
                f"run_id: this live link grants run {holder.run_id} only, not {run_id}", reason="LINK_OTHER_RUN"
            )
        row = await self.hub.store.live_row(run_id)
        if (why := row.refusal(holder.link_id, dt.datetime.now(dt.UTC))) is not None:
            raise link_refused(why, run_id)

    async def mark_stopped(self, caller: Caller, run_id: uuid.UUID, at: dt.datetime) -> None:
        """The run stopped (StopRun's notice): its watchers see STOPPED, its links' webhooks are told."""
        await owned(self.store, caller, run_id)
        row = await self.hub.store.live_row(run_id)
        if row.current not in ENDED:
            await self.hub.store.mark_stopped(run_id, at)
            self.hub.notify(run_id, row, STOPPED, at, "stopped")
            await self.hub.announce(run_id, STOPPED)
            log.info("live state run_id=%s state=STOPPED links=%d", run_id, len(row.links))
