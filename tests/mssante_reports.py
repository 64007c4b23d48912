"""Receipts as real mail systems write them, for the MSSanté receipt tests.

`mdn()` follows RFC 8098 as Thunderbird sends it (text part, then
message/disposition-notification, optionally the original headers); `dsn()` follows
RFC 3464 as Postfix bounces (text part, message/delivery-status with a per-message and a
per-recipient block, then text/rfc822-headers of the original mail). CRLF line ends,
as on the wire.
"""

from __future__ import annotations


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def mdn(
    *,
    message_id: str,
    original_message_id: str,
    final_recipient: str,
    disposition: str = "manual-action/MDN-sent-manually; displayed",
    to: str = "carebus@carebus.mssante.fr",
    original_headers: str = "",
) -> bytes:
    third = ""
    if original_headers:
        third = f"""--=_mdn
Content-Type: text/rfc822-headers; name="MDNPart3.txt"
Content-Disposition: inline

{original_headers.strip()}

"""
    return _crlf(f"""From: {final_recipient}
To: {to}
Subject: =?UTF-8?Q?Lu=C2=A0=3A?= [CareBus] Demande d'avis
Date: Mon, 17 Mar 2025 10:12:00 +0100
Message-ID: {message_id}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=disposition-notification;
 boundary="=_mdn"

This is a multi-part message in MIME format.
--=_mdn
Content-Type: text/plain; charset=UTF-8; format=flowed
Content-Transfer-Encoding: 8bit

Ceci est un accusé de lecture pour le message envoyé.

--=_mdn
Content-Type: message/disposition-notification; name="MDNPart2.txt"
Content-Disposition: inline

Reporting-UA: cardio-vichy.mssante.fr; Mozilla Thunderbird
Final-Recipient: rfc822;{final_recipient}
Original-Message-ID: {original_message_id}
Disposition: {disposition}

{third}--=_mdn--
""")


def dsn(
    *,
    message_id: str,
    original_headers: str,
    final_recipient: str,
    action: str = "failed",
    status: str = "5.1.1",
    diagnostic: str = "smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
    to: str = "carebus@carebus.mssante.fr",
) -> bytes:
    diag = diagnostic.format(rcpt=final_recipient)
    return _crlf(f"""From: MAILER-DAEMON@relay.mssante.fr (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
Date: Mon, 17 Mar 2025 09:42:10 +0100 (CET)
Message-ID: {message_id}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="B1.1742200930/relay.mssante.fr"

This is a MIME-encapsulated message.

--B1.1742200930/relay.mssante.fr
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host relay.mssante.fr.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

--B1.1742200930/relay.mssante.fr
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.mssante.fr
X-Postfix-Queue-ID: 4ZGk1x0Qxyz
Arrival-Date: Mon, 17 Mar 2025 09:42:09 +0100 (CET)

Final-Recipient: rfc822; {final_recipient}
Original-Recipient: rfc822;{final_recipient}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.cardio-vichy.mssante.fr
Diagnostic-Code: {diag}

--B1.1742200930/relay.mssante.fr
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{original_headers.strip()}

--B1.1742200930/relay.mssante.fr--
""")
