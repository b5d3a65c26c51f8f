"""r1v.algos"""
