"""Everything that knows about ranks: launcher detection, the start-up Session, the engines, failure and preemption."""
