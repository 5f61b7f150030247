"""Pure building blocks of the harmonization pipeline: models, data, metrics, storage, tracking."""
