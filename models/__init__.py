"""noxblock's optimisation core: the charging problem, its MILP, HiGHS, and baseline policies.

Five lines from problem to plan::

    from models import lamppost_district, solve
    problem = lamppost_district(200, seed=1)          # or build Site/Session/TimeGrid yourself
    result = solve(problem)                           # rolling-horizon-ready MILP, HiGHS
    print(result.status, result.gap, result.total_s)
    result.schedule.to_frame()                        # current_a per session and step

``models`` knows nothing of the scheduler, the simulator or OCPP.
"""

from models.compiled import Compiled, compile_problem
from models.errors import ModelError, ProblemError, SolverError
from models.formulation import Formulation, build_formulation
from models.highs import (
    SolveResult,
    SolverOptions,
    SolveStatus,
    TargetReport,
    solve,
    solve_formulation,
    solve_lp_relaxation,
)
from models.instances import day_signals, lamppost_district
from models.problem import (
    PHASES,
    ROOT,
    ROTATIONS,
    VDE_UNBALANCE_A,
    ChargePoint,
    EmissionTarget,
    Node,
    Problem,
    Session,
    Signals,
    Site,
    TimeGrid,
    Weights,
)
from models.schedule import Schedule, Violation, check_schedule

__all__ = [
    "PHASES",
    "ROOT",
    "ROTATIONS",
    "VDE_UNBALANCE_A",
    "ChargePoint",
    "Compiled",
    "EmissionTarget",
    "Formulation",
    "ModelError",
    "Node",
    "Problem",
    "ProblemError",
    "Schedule",
    "Session",
    "Signals",
    "Site",
    "SolveResult",
    "SolveStatus",
    "SolverError",
    "SolverOptions",
    "TargetReport",
    "TimeGrid",
    "Violation",
    "Weights",
    "build_formulation",
    "check_schedule",
    "compile_problem",
    "day_signals",
    "lamppost_district",
    "solve",
    "solve_formulation",
    "solve_lp_relaxation",
]
