"""r1v.rewards"""
