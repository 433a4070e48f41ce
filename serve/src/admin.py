"""``POST /admin/draft {"draft": "DIR"}``: swap the serving draft without a restart.

The new draft loads beside the old one (in a worker thread, while the engine steps), then the
engine swaps it in between two steps (``SpecEngine.swap_draft``): requests in flight continue
with it from their next step, none is dropped, and output stays the target's. A missing
directory, a draft of another kind or for another target gets a 400 and the old draft serves
on. ``--api-key`` guards the route when set; only loopback clients may call it unless
``--admin-from`` allows more (``any``, or IPs and networks: ``10.0.0.0/8,192.168.1.7``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time

from fastapi import Request
from pydantic import BaseModel, ConfigDict
from specdistill.serve.protocol import APIError

from specdistill.models.drafts import load_draft

SWAP_TIMEOUT = 600.0  # seconds: prefilling the new draft over long running rows takes a while on CPUs


class DraftSwapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    draft: str


def admin_networks(spec: str) -> list | None:
    """``--admin-from`` as networks (None: any client); ValueError names a bad entry."""
    if spec == "any":
        return None
    if spec == "loopback":
        return [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
    networks = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError as err:
            raise ValueError(f"admin_from takes loopback, any, or IPs/networks separated by commas; "
                             f"{part!r} is none of them") from err
    if not networks:
        raise ValueError("admin_from is empty: give loopback, any, or IPs/networks")
    return networks


def check_admin_client(raw: Request, spec: str) -> None:
    networks = admin_networks(spec)
    if networks is None:
        return
    host = raw.client.host if raw.client else ""
    try:
        address = ipaddress.ip_address(host)
        address = getattr(address, "ipv4_mapped", None) or address  # ::ffff:127.0.0.1 on dual-stack sockets
    except ValueError:
        address = None
    if address is None or not any(address in network for network in networks):
        raise APIError(403, f"/admin is open to {spec} clients only, not {host or 'this client'}; "
                            "allow more with --admin-from", type="permission_error", code="forbidden")


async def swap_draft(raw: Request, body: DraftSwapRequest):
    state = raw.app.state.server
    check_admin_client(raw, state.config.admin_from)
    gen, start = state.engine.engine.gen, time.perf_counter()
    previous = state.engine.engine.draft_versions[-1]
    try:  # whatever the folder holds that does not load (no config, bad weights) is the caller's to fix
        draft, vocab = await asyncio.to_thread(load_draft, body.draft, gen.target, gen.target.dtype,
                                               state.config.draft_vocab_size)
    except Exception as err:
        raise _refused(body.draft, err, previous) from err
    try:
        version = await asyncio.wait_for(asyncio.wrap_future(state.engine.swap_draft(draft, body.draft, vocab)),
                                         SWAP_TIMEOUT)
    except ValueError as err:  # another kind of draft, or one for another target
        raise _refused(body.draft, err, previous) from err
    except TimeoutError as err:  # the engine did not reach it in time; the cancelled swap is skipped
        raise APIError(503, f"the swap to {body.draft!r} did not happen within {SWAP_TIMEOUT:.0f} s and was "
                            f"abandoned; the draft {previous.name!r} serves on; retry", type="server_error",
                       code="swap_timeout") from err
    return {"draft": version.name, "version": version.version, "previous": {"draft": previous.name,
            "version": previous.version}, "seconds": round(time.perf_counter() - start, 3)}


def _refused(name: str, err: Exception, serving) -> APIError:
    return APIError(400, f"cannot serve the draft {name!r}: {err}. The draft {serving.name!r} (version "
                         f"{serving.version}) serves on", param="draft")
