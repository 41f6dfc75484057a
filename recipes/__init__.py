"""Recipes: how the bundled default model's data is made (synthetic clips) and, later, trained."""
