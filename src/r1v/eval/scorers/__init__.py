"""r1v.eval.scorers"""
