"""Recipes: the code that makes Tandem's artefacts, kept out of the runtime packages.

Nothing here ships in the wheel or is imported by the services, the client or the ``tandem``
command; run a recipe from a checkout (``python -m recipes.<name>.<step>``).
"""
