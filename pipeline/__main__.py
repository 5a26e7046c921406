import sys

from pipeline.logs import quiet_beam_notices

quiet_beam_notices()  # before Beam is imported: it logs the notices as it loads

from pipeline.run import main  # noqa: E402

sys.exit(main())
