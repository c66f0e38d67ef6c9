"""Shadow audits: a random fraction of served `/certify` answers re-certified by Monte-Carlo in
the background (`auditor`, listed by `GET /audits`), and the drift alarm on their outcomes
(`drift`)."""
