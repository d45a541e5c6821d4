package config

// Example returns the default configuration as a commented TOML file, as
// installed at /etc/tokend/config.toml and shown by the documentation. It
// decodes to exactly Default().
func Example() string { return example }

const example = `# tokend configuration.
#
# tokend reads /etc/tokend/config.toml, then $XDG_CONFIG_HOME/tokend/config.toml
# (~/.config/tokend/config.toml when XDG_CONFIG_HOME is unset); a key set in
# the second file overrides the same key in the first. "tokend agent --config
# FILE" (or $TOKEND_CONFIG) reads only FILE. Unknown keys are an error.
#
# Every value below is the built-in default. Durations are strings with a
# unit: "30s", "5m", "1h30m", "0s".

# Token directory that HTCondor reads.
# "" = SEC_TOKEN_DIRECTORY when HTCondor sets it, else <home>/.condor/tokens.d.
dir = ""

# Control socket of the agent. "" = $XDG_RUNTIME_DIR/tokend/agent.sock.
socket = ""

# File name of the token fetched at the start of a session.
session_token = "tokend-session"

# Trust domain of the default pool (the pool of session_token, [fetch] and
# [validate]): the iss of its tokens, HTCondor's TRUST_DOMAIN. "" = what
# verifyd reports, else condor_config_val TRUST_DOMAIN; while none is known
# the default pool judges every token no [pools.NAME] claims.
trust_domain = ""

# Plaintext tokens found on disk in the token directory when the agent starts:
#   import  load the valid ones into memory and leave the files alone
#   move    load them and delete the files after a successful import
#   ignore  leave them alone and do not load them
legacy = "import"

# Let root into the mount (FUSE allow_root), as HTCondor's per-user flocking
# needs. Requires user_allow_other in /etc/fuse.conf.
allow_root = false

# Log which process (pid, executable) opened which token.
audit = false

[fetch]
# How a token is obtained:
#   exec     run condor_token_fetch (or the command below) and read the token
#            from its standard output
#   request  run condor_token_request and wait for an administrator to approve
#   local    sign a token with the embedded issuer (see [fetch.local])
method = "exec"

# Program and fixed arguments. [] = condor_token_fetch (exec) or
# condor_token_request (request). Any program that prints a token on standard
# output, or exits non-zero with a message on standard error, will do.
command = []

# Requested token lifetime, in whole seconds. "0s" = let the pool decide.
lifetime = "0s"

# Authorization levels to limit the token to, e.g. ["READ", "WRITE"].
# [] = no limit.
authz = []

# How long one fetch may take; a failed fetch leaves existing tokens alone.
timeout = "60s"

# After a key rotation, a tool's first look at the directory waits this long
# for the fresh session token (at most "1m"). "0s" = never wait.
wait = "2s"

# Passed as -pool, -name, -type and -key to the fetch command when not "".
pool = ""
name = ""
type = ""
key = ""

[fetch.local]
# The embedded issuer: signs tokens as condor_token_create does.
# A SEC_PASSWORD_DIRECTORY-like folder of scrambled key files.
key_dir = ""
# Name of the signing key file in key_dir.
key = "POOL"
# Token subject. "" = <user>@<issuer>.
identity = ""
# Token issuer (the pool's TRUST_DOMAIN). "" = trust_domain, else the host name.
issuer = ""

[validate]
# Issuers (iss) to accept, e.g. ["cm.example.org"]. [] = accept any issuer.
trust_domains = []

# Socket of "tokend verifyd", which checks signatures against the pool's
# current keys; used when it answers. "" = do not ask verifyd.
verifyd = "/run/tokend/verify.sock"

# Keys the agent itself may read, for personal pools and tests. "" = none.
key_dir = ""

# POOL key file, when it is not <key_dir>/POOL.
pool_key = ""

# Command that tries one token against the pool, for sites without verifyd,
# e.g. ["condor_ping", "-type", "collector", "READ"]. [] = no probe.
probe = []

# How often every token is checked again.
interval = "5m"

# Hide a token this long before it expires.
exp_margin = "30s"

[session]
# Delay between the last logout and the wipe, so a quick re-login keeps the
# tokens. "0s" = wipe at once.
grace = "0s"

[limits]
# Most token files in the directory.
max_files = 64
# Largest token file, in bytes (at most 1048576).
max_file_size = 65536
# Longest file name, in bytes (at most 255).
max_name_len = 255

# Other pools: a flocking or national pool whose tokens the user also holds.
# Each [pools.NAME] table (NAME: letters, digits, "-", "_"; not "default")
# adds one pool with its own session token, fetch and key checks; a token
# belongs to the pool whose trust_domain is its iss, and only that pool's
# checks judge it. Tokens of no configured pool are shown and left alone.
# A table in the user's file replaces the system file's table of that name.
# For example (none by default):
#
# [pools.osg]
# # Required: the iss of this pool's tokens, its TRUST_DOMAIN; no two pools
# # share one.
# trust_domain = "flock.opensciencegrid.org"
# # File name of its session token. Default: "tokend-" + NAME.
# session_token = "tokend-osg"
#
# [pools.osg.fetch]
# # How: method, command, lifetime, authz, timeout and wait take [fetch]'s
# # values when unset.
# method = "exec"
# command = []
# lifetime = "0s"
# authz = []
# timeout = "60s"
# wait = "2s"
# # Where: never taken from [fetch]. An exec or request pool names its pool
# # or schedd here, or has a command of its own; a local pool has its own
# # [pools.NAME.fetch.local] key_dir.
# pool = "cm.osg.example"
# name = ""
# type = ""
# key = ""
#
# [pools.osg.fetch.local]
# key_dir = ""
# # Default "POOL".
# key = "POOL"
# identity = ""
# # "" or this pool's trust_domain.
# issuer = ""
#
# [pools.osg.validate]
# # This pool's own key checks; unset = none (expiry only). A verifyd speaks
# # for one trust domain: a pool's verifyd is not [validate]'s.
# verifyd = ""
# key_dir = ""
# pool_key = ""
# probe = []
`
