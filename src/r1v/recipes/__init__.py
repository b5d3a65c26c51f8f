"""r1v.recipes"""
