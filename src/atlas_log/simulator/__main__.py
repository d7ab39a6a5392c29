"""`python -m atlas_log.simulator` runs the simulator CLI."""

from atlas_log.simulator.cli import simulate

simulate(prog_name="python -m atlas_log.simulator")
