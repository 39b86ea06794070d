"""Tools around the pipeline that no stage runs: benchmarks, recipes over seeds (`make sweep`, `make results`), the
calibration ladder, reports, `mnistgan verify` with the seed spread it judges by (`mnistgan spread`), and
`mnistgan ui`.

May import everything below it: mnistgan.evaluation, mnistgan.gan and the shared base.
"""
