"""pricing: in-play pricing models (pure), the pricing engine and the odds streaming tier."""
