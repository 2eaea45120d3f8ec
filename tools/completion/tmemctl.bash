# bash completion for tmemctl(1); `make install` puts it in /usr/local/share/bash-completion/completions
# (loaded by the bash-completion package). Subcommands come from `tmemctl --help` (once per shell),
# flags from `tmemctl CMD --help`, backend names from `tmemctl backends`, MNT from the fuse.tmemfs
# mounts in /proc/mounts, and host pool names from /dev/shm (their default cc_dir).

_tmemctl_mounts() {
    local src mnt type rest
    while IFS=" " read -r src mnt type rest; do
        [[ $type == fuse.tmemfs ]] && printf '%b\n' "$mnt"  # /proc/mounts escapes spaces as \040
    done </proc/mounts
}

_tmemctl_hosts() {
    local dir
    for dir in /dev/shm/tmemfs-host-*; do
        [[ -d $dir ]] && printf '%s\n' "${dir#/dev/shm/tmemfs-host-}"
    done
}

_tmemctl() {
    local cur prev words cword
    _init_completion || return
    [[ -n ${_tmemctl_commands-} ]] ||
        _tmemctl_commands=$(tmemctl --help 2>/dev/null | grep -o -m1 '{[a-z,-]*}' | tr -d '{}' | tr , ' ')
    if ((cword == 1)); then
        COMPREPLY=($(compgen -W "$_tmemctl_commands --help --version" -- "$cur"))
        return
    fi
    local command=${words[1]}
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$(tmemctl "$command" --help 2>/dev/null | grep -o -- '--\?-[a-z][a-z-]*' | sort -u)" \
            -- "$cur"))
    elif [[ $command == backends ]]; then
        return
    elif ((cword == 2)) && [[ $command == host || $command == take-back || $command == give-back ]]; then
        COMPREPLY=($(compgen -W "$(_tmemctl_hosts)" -- "$cur"))
    elif ((cword == 2)); then
        local IFS=$'\n'
        COMPREPLY=($(compgen -W "$(_tmemctl_mounts)" -- "$cur"))
    elif ((cword == 3)) && [[ $command == register || $command == replace ]]; then
        local item=${cur##*+}
        COMPREPLY=($(compgen -P "${cur%"$item"}" -W "$(tmemctl backends 2>/dev/null | awk '/^[a-z]/ { print $1 }')" \
            -- "$item"))
    fi
}

complete -F _tmemctl tmemctl
