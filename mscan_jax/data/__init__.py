"""Data layer: schema and batch contract, sequence builder, splits, loaders, input pipeline."""
