"""slimdiff.unet"""
