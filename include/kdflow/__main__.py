from kdflow.cli import main

raise SystemExit(main())
