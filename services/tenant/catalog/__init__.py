"""The model catalog: public model names, their metadata and their routes to providers."""
