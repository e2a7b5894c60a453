"""The control API: operations (``ops``), a Unix-socket server (``server``) and its client (``client``)."""
