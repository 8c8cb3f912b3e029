"""slimdiff.profile"""
