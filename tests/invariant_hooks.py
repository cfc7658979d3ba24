"""An operator's invariant hook module, loaded by agents (FABRIC_INVARIANT_HOOKS)."""

from fabric.policy import DispatchFacts, register_invariant_hook


def one_cpu_at_most(facts: DispatchFacts) -> bool:
    """No task or actor may hold more than one CPU."""
    return facts.cpus <= 1


register_invariant_hook("one-cpu-at-most", one_cpu_at_most, timeout_s=0.5)
