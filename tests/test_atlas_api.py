"""The Atlas client on its own: clock from the Date header, pacing, and what a cycle reads up to."""

from __future__ import annotations

import email.utils
import time
from pathlib import Path

from conftest import StartSim, exporter_config

from atlas_log.atlas_api import AtlasClient


def test_a_server_clock_behind_ours_pulls_the_read_limit_back(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(projects_per_org=1, events=10)
    client = AtlasClient(exporter_config(sim, tmp_path))
    try:
        client.list_orgs()
        assert client.server_clock_offset_s == 0.0  # the simulator's clock is ours
        client._note_server_clock(email.utils.formatdate(time.time() - 30, usegmt=True))
        assert -31.0 <= client.server_clock_offset_s <= -28.0
        client._note_server_clock(email.utils.formatdate(time.time() + 30, usegmt=True))
        assert client.server_clock_offset_s == 0.0  # a server ahead of us never pushes the limit forward
        client._note_server_clock("not a date")
        assert client.server_clock_offset_s == 0.0
    finally:
        client.close()
