"""Using a trained generator: the one Predictor (composite + mask at any size -> harmonized image) and the
served model's request and answer formats."""
