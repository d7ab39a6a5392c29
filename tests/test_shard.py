"""`--shard 0/2` and `--shard 1/2` on one destination: together exactly the ground truth, each its own checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import StartSim, assert_exactly_once, exporter_config, run_cli

from atlas_log.get_latest import Exporter, load_checkpoint
from atlas_log.verify import verify_destination
from atlas_log.write_events import LocalSink


def test_two_shards_export_everything_once_with_separate_checkpoints(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(orgs=2, projects_per_org=4, events=1_200)
    exporters = [Exporter(exporter_config(sim, tmp_path, shard=f"{i}/2")) for i in range(2)]
    try:
        for round_ in range(2):
            if round_:
                for project in sim.projects():
                    sim.add_events(project["id"], 5)
            for exporter in exporters:
                result = exporter.run_cycle()
                assert not result.failures and result.scopes > 0
    finally:
        for exporter in exporters:
            exporter.close()
    sink = LocalSink(tmp_path)
    assert_exactly_once(sim, sink)
    owned = []
    for i in range(2):
        cp, version = load_checkpoint(sink, f"_state/checkpoint-shard-{i}-of-2.json")
        assert version is not None and cp.seq == 2
        owned.append(set(cp.scopes))
        names = [k.rsplit("/", 1)[-1] for k in sink.list_keys("dt=")]
        assert sum(n.startswith(f"atlas-events-s{i}of2-") for n in names) == 2
    every_scope = {f"org:{o['id']}" for o in sim.orgs()} | {f"project:{p['id']}" for p in sim.projects()}
    assert owned[0].isdisjoint(owned[1]) and owned[0] | owned[1] == every_scope
    assert sink.get("_state/checkpoint.json") is None
    report = verify_destination(sink)
    assert report.ok and report.checkpoints == 2, report.render()
    one = verify_destination(sink, (1, 2))
    assert one.ok and one.checkpoints == 1 and one.scopes == len(owned[1])
    wrong = run_cli("verify", "--output", str(tmp_path), "--shard", "0/3")  # never a silent OK for a wrong shard
    assert wrong.returncode == 1 and "nothing to verify" in wrong.stderr
    status = json.loads(run_cli("status", "--output", str(tmp_path), "--json").stdout)
    assert {c["shard"] for c in status["checkpoints"]} == {"0/2", "1/2"}
    assert len(status["scopes"]) == len(every_scope)
