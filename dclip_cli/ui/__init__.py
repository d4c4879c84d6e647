"""``dclip ui``: a local web page (Gradio) for editing, sweeping, mixing, translating and fine-tuning.

Three modules, so that a change of dclip's library API touches one file:

* :mod:`dclip_cli.ui.backend`: every call into dclip's library, with plain-Python inputs and outputs (paths,
  numbers, small frozen records). It never imports Gradio.
* :mod:`dclip_cli.ui.app`: the Gradio page (tabs, events, progress); it calls only the backend.
* :mod:`dclip_cli.ui.server`: the options of ``dclip ui`` and the launch (loopback by default, authentication,
  no telemetry).

Importing this package imports neither torch nor Gradio.
"""
