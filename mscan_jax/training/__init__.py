"""Training: the Scenario Bias Eliminator objective, the jitted step, the loop, checkpoints."""
