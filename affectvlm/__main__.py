from affectvlm.cli import main

raise SystemExit(main())
