"""MSSanté outbound adapter, pure part: the mail (`mail`) and its IHE XDM archive (`xdm`).

Building is kept apart from sending (SMTP over mutual TLS lives elsewhere) so that the
exact bytes a professional receives can be tested without a socket.
"""
