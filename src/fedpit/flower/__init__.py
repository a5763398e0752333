"""fedpit on Flower: the same client update and server aggregate, across machines.

- ``fedpit.flower.client_app:app``: the ClientApp. It trains with the method's ``client_update`` on the node's own
  data (:mod:`~fedpit.flower.client_work`), keeps the private state (local adapter, synthetic data) on the node's
  disk, and replies with the upload only; the :func:`~fedpit.flower.client_app.private_guard` mod checks every
  outgoing message for private tensors.
- ``fedpit.flower.server_app:app``: the ServerApp. Its round loop samples clients with
  :func:`~fedpit.federation.round_plan` (as the in-process runner does), aggregates with the method's
  ``server_aggregate`` (optionally through Flower's differential-privacy wrapper), records dropped clients, and
  writes the same run folder as ``fedpit run`` (both through :mod:`fedpit.federation` and :mod:`fedpit.rundir`).
- :mod:`fedpit.flower.simulation`: Flower's simulation runtime (Ray), one client at a time.
- :mod:`fedpit.flower.deploy`: certificates, SuperNode keys, and a SuperLink + SuperNodes launcher for localhost.
- :mod:`fedpit.flower.node` (``fedpit flower node``): a site, its SuperNode (Flower's ``flower-supernode``) and a
  long-lived :mod:`fedpit.flower.executor` to which the ClientApp hands each message's work, so the backbone stays
  loaded across messages and runs.

fedpit uses Flower through its public API only: ``flwr.app``, ``flwr.clientapp``, ``flwr.serverapp`` and
``flwr.simulation`` in Python, and Flower's commands (``flower-superlink``, ``flower-supernode``, ``flwr``) as
processes (``tests/test_flower_public_api.py`` checks every file under ``src/``). Tested on Flower 1.41 and 1.42.
"""

from ..extras import require

require("flwr", "fedpit on Flower")  # every part of fedpit.flower runs Flower: one line naming the [flower] extra
