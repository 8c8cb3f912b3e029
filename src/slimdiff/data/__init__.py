"""slimdiff.data"""
