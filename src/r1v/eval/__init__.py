"""r1v.eval"""
