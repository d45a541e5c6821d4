# bash completion for tokend                                  -*- shell-script -*-

_tokend() {
	local cur prev words cword
	_init_completion 2>/dev/null || {
		cur=${COMP_WORDS[COMP_CWORD]}
		prev=${COMP_WORDS[COMP_CWORD-1]}
		words=("${COMP_WORDS[@]}")
		cword=$COMP_CWORD
	}

	local commands="status list fetch rm wipe session agent verifyd doctor demo version help"
	if [[ $cword -eq 1 ]]; then
		COMPREPLY=($(compgen -W "$commands" -- "$cur"))
		return
	fi

	case $prev in
	--config | --pool-key)
		COMPREPLY=($(compgen -f -- "$cur"))
		return
		;;
	--dir | --password-dir)
		COMPREPLY=($(compgen -d -- "$cur"))
		return
		;;
	--socket)
		COMPREPLY=($(compgen -f -- "$cur"))
		return
		;;
	--pool)
		# Pool names, from the configuration files ([pools.NAME] tables).
		local pools
		pools=$(sed -n 's/^[[:space:]]*\[pools\.\([A-Za-z0-9_-]*\)\][[:space:]]*$/\1/p' \
			/etc/tokend/config.toml "${XDG_CONFIG_HOME:-$HOME/.config}/tokend/config.toml" 2>/dev/null)
		COMPREPLY=($(compgen -W "default $pools" -- "$cur"))
		return
		;;
	--name | --lifetime | --authz | --pid | --timeout | --trust-domain)
		return
		;;
	--log-level)
		COMPREPLY=($(compgen -W "debug info warn error" -- "$cur"))
		return
		;;
	esac

	local flags=""
	case ${words[1]} in
	status | doctor) flags="--config --json --socket" ;;
	list | ls) flags="--all --config --json --socket" ;;
	fetch) flags="--pool --name --lifetime --authz --config --json --socket" ;;
	rm)
		if [[ $cur != -* ]]; then
			# Token names, from the agent (never the tokens themselves).
			local names
			names=$(tokend list --json 2>/dev/null | sed -n 's/^ *"name": "\(.*\)",$/\1/p')
			COMPREPLY=($(compgen -W "$names" -- "$cur"))
			return
		fi
		flags="--config --socket"
		;;
	wipe) flags="--config --logout --socket" ;;
	session)
		if [[ $cword -eq 2 && $cur != -* ]]; then
			COMPREPLY=($(compgen -W "open close" -- "$cur"))
			return
		fi
		flags="--config --socket --pid --timeout"
		;;
	agent) flags="--config --dir --socket" ;;
	verifyd) flags="--config --socket --password-dir --pool-key --trust-domain --log-level" ;;
	esac
	COMPREPLY=($(compgen -W "$flags" -- "$cur"))
}

complete -F _tokend tokend
