"""Who may send ADT over MLLP, pure. MLLP has no authentication of its own, so a
listener that a stranger could reach knows its hospitals by network and facility: a
peer outside every configured network is refused, and a hospital may only announce
stays for the FINESS it was configured with (no discharges of another facility)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from bus.settings import MllpSender

_LOOPBACK = MllpSender(id="loopback")


@dataclass(frozen=True, slots=True)
class SenderRegistry:
    senders: tuple[MllpSender, ...]

    @classmethod
    def from_settings(cls, senders: list[MllpSender]) -> SenderRegistry:
        return cls(tuple(senders) or (_LOOPBACK,))

    def for_peer(self, host: str) -> MllpSender | None:
        try:
            addr = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return None
        for sender in self.senders:
            for net in sender.networks:
                if addr in ipaddress.ip_network(net, strict=False):
                    return sender
        return None


def may_send_for(sender: MllpSender, finess: str | None) -> bool:
    return not sender.finess or (finess is not None and finess in sender.finess)
