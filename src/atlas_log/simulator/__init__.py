"""A faithful MongoDB Atlas Admin API v2 simulator (orgs, projects, their event feeds) for tests and demos.

from atlas_log.simulator import Simulator, SimulatorConfig, Fault
with Simulator(SimulatorConfig(events=1000)) as sim:
    print(sim.base_url)
"""

from atlas_log.simulator.config import Fault, SimulatorConfig
from atlas_log.simulator.sim import Simulator

__all__ = ["Fault", "Simulator", "SimulatorConfig"]
