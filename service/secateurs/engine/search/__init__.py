"""The budget search: its cost model, sensitivities, solver, refinement and measured verification."""
