"""The REST service and web page of ``adcopilot serve`` (FastAPI); see :mod:`adcopilot.serve.app`."""
