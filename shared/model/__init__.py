"""The model: features, training and evaluation, the registry, explanations and the prior."""
