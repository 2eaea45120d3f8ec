# bash completion for tmemfs(1); `make install` puts it in /usr/local/share/bash-completion/completions
# (loaded by the bash-completion package). Flags, mount options and backend names are read from
# `tmemfs --help`, once per shell, so they are those of the installed version and its plugins.

_tmemfs_words() {
    [[ -n ${_tmemfs_help_words-} ]] && return
    _tmemfs_help_words=$(tmemfs --help 2>/dev/null | awk '
        function opt(w) { sub(/=.*/, "=", w); print "opt " w }
        /^[^ ]/    { top = $0; part = ""; next }
        /^  [^ ]/  { part = $0; next }
        top == "OPTIONS" && part == "" && /^    -/ {
            n = split($0, t, /[ ,]+/); for (i = 1; i <= n; i++) if (t[i] ~ /^-/) print "flag " t[i]; else if (t[i] != "") break
        }
        part ~ /tmemfs options/ && /^    [a-z]/ { opt($1) }
        part ~ /^  backends/ && /^    [a-z]/   { print "backend " $1 }
        part ~ /^  backends/ && /^      [a-z]/ { opt($1) }
        part ~ /FUSE/ && !done { fuse = fuse " " $0; if (fuse ~ / are passed/) {
            sub(/ are passed.*/, "", fuse); n = split(fuse, t, /, */)
            for (i = 1; i <= n; i++) { split(t[i], w, " "); if (w[1] != "") opt(w[1]) }
            done = 1 } }')
}

_tmemfs_list() {
    awk -v kind="$1" '$1 == kind && !seen[$2]++ { print $2 }' <<<"$_tmemfs_help_words"
}

# Completes the last item of `-o opt,opt,...`: an option name, a backend (cleancache=a+b) or a file.
_tmemfs_options() {
    local last=${cur##*,}
    local prefix=${cur%"$last"}
    compopt -o nospace
    if [[ $last != *=* ]]; then
        COMPREPLY=($(compgen -P "$prefix" -W "$(_tmemfs_list opt)" -- "$last"))
        return
    fi
    local key=${last%%=*} val=${last#*=}
    case $key in
        cleancache)
            local item=${val##*+}
            COMPREPLY=($(compgen -P "$prefix$key=${val%"$item"}" -W "$(_tmemfs_list backend)" -- "$item")) ;;
        log | trace | cc_store_password_file)
            COMPREPLY=($(compgen -P "$prefix$key=" -f -- "$val")) ;;
        cc_dir)
            COMPREPLY=($(compgen -P "$prefix$key=" -d -- "$val")) ;;
    esac
}

_tmemfs() {
    local cur prev words cword
    _init_completion -n =: || return
    _tmemfs_words
    if [[ $prev == -o ]]; then
        _tmemfs_options
        # readline replaces only the text after the last `=` or `:` (COMP_WORDBREAKS)
        local lead=${cur%"${cur##*[=:]}"}
        COMPREPLY=("${COMPREPLY[@]#"$lead"}")
    elif [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$(_tmemfs_list flag)" -- "$cur"))
    else
        _filedir -d
    fi
}

complete -F _tmemfs tmemfs
