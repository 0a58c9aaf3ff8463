# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_gitopsd_global_optspecs
    string join \n config= log-format= h/help V/version
end

function __fish_gitopsd_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_gitopsd_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_gitopsd_using_subcommand
    set -l cmd (__fish_gitopsd_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c gitopsd -n "__fish_gitopsd_needs_command" -l config -d 'Configuration file' -r -F
complete -c gitopsd -n "__fish_gitopsd_needs_command" -l log-format -d 'Log format; `text` is coloured on a terminal' -r -f -a "text\t''
json\t''"
complete -c gitopsd -n "__fish_gitopsd_needs_command" -s h -l help -d 'Print help'
complete -c gitopsd -n "__fish_gitopsd_needs_command" -s V -l version -d 'Print version'
complete -c gitopsd -n "__fish_gitopsd_needs_command" -f -a "run" -d 'Run the reconciler: poll the repository and keep every environment at its branch tip'
complete -c gitopsd -n "__fish_gitopsd_needs_command" -f -a "diff" -d 'Show what would change. Exit 0: no change, 1: changes, 2: error'
complete -c gitopsd -n "__fish_gitopsd_needs_command" -f -a "validate" -d 'Check the configuration and every environment\'s manifests, reporting all problems. Exit 0: valid, 1: problems found, 2: could not check'
complete -c gitopsd -n "__fish_gitopsd_needs_command" -f -a "init" -d 'Write a starting config (to --config) for a repository and one environment, after fetching the branch tip and reading the environment\'s folder. Never overwrites a file'
complete -c gitopsd -n "__fish_gitopsd_needs_command" -f -a "status" -d 'Show each environment\'s current and last healthy revision, the rollout step in flight and failing checks'
complete -c gitopsd -n "__fish_gitopsd_needs_command" -f -a "approve" -d 'Approve a revision in an environment with `approval = "manual"` (asks the running daemon through its API)'
complete -c gitopsd -n "__fish_gitopsd_needs_command" -f -a "pause" -d 'Pause an environment: no new rollout starts, a rollout in flight holds at its step'
complete -c gitopsd -n "__fish_gitopsd_needs_command" -f -a "retry" -d 'Clear the held failure of the branch tip, so the running daemon rolls it out again (after a fix outside git: a missing CRD installed, a quota raised)'
complete -c gitopsd -n "__fish_gitopsd_needs_command" -f -a "resume" -d 'Resume a paused environment, and lift a rollback pin'
complete -c gitopsd -n "__fish_gitopsd_needs_command" -f -a "rollback" -d 'Put an environment back to REV now and keep it there until the next commit or a resume'
complete -c gitopsd -n "__fish_gitopsd_needs_command" -f -a "history" -d 'Print the journal'
complete -c gitopsd -n "__fish_gitopsd_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand run" -l config -d 'Configuration file' -r -F
complete -c gitopsd -n "__fish_gitopsd_using_subcommand run" -l log-format -d 'Log format; `text` is coloured on a terminal' -r -f -a "text\t''
json\t''"
complete -c gitopsd -n "__fish_gitopsd_using_subcommand run" -l once -d 'One pass over all environments, then exit (non-zero if any failed)'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand run" -s h -l help -d 'Print help'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand diff" -l env -d 'Only this environment' -r
complete -c gitopsd -n "__fish_gitopsd_using_subcommand diff" -l rev -d 'Desired revision (default: the configured branch\'s tip)' -r
complete -c gitopsd -n "__fish_gitopsd_using_subcommand diff" -l against -d '`live` compares with the target; a revision compares two revisions offline' -r
complete -c gitopsd -n "__fish_gitopsd_using_subcommand diff" -l output -d 'Output format' -r -f -a "text\t''
markdown\t''
json\t''"
complete -c gitopsd -n "__fish_gitopsd_using_subcommand diff" -l max-bytes -d 'Markdown only: leave out object diffs past this size (a pull-request comment holds at most 65536 characters)' -r
complete -c gitopsd -n "__fish_gitopsd_using_subcommand diff" -l color -d 'Text only: colour the diff' -r -f -a "auto\t'When standard output is a terminal'
always\t''
never\t''"
complete -c gitopsd -n "__fish_gitopsd_using_subcommand diff" -l config -d 'Configuration file' -r -F
complete -c gitopsd -n "__fish_gitopsd_using_subcommand diff" -l log-format -d 'Log format; `text` is coloured on a terminal' -r -f -a "text\t''
json\t''"
complete -c gitopsd -n "__fish_gitopsd_using_subcommand diff" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand validate" -l rev -d 'Revision to check (default: the configured branch\'s tip)' -r
complete -c gitopsd -n "__fish_gitopsd_using_subcommand validate" -l config -d 'Configuration file' -r -F
complete -c gitopsd -n "__fish_gitopsd_using_subcommand validate" -l log-format -d 'Log format; `text` is coloured on a terminal' -r -f -a "text\t''
json\t''"
complete -c gitopsd -n "__fish_gitopsd_using_subcommand validate" -l server -d 'Also dry-run every object on each environment\'s cluster (server-side apply with dryRun=All), so what only the API server knows is caught too'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand validate" -l config-only -d 'Check the configuration file only: no fetch, no manifests'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand validate" -s h -l help -d 'Print help'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand init" -l repo -d 'The repository: a local path, file://, git://, https:// or ssh:// URL' -r
complete -c gitopsd -n "__fish_gitopsd_using_subcommand init" -l branch -d 'The branch every environment follows' -r
complete -c gitopsd -n "__fish_gitopsd_using_subcommand init" -l path -d 'The environment\'s folder in the repository. A folder holding kustomization.yaml is rendered with kustomize, one holding Chart.yaml with helm' -r
complete -c gitopsd -n "__fish_gitopsd_using_subcommand init" -l target -d 'Where the objects go' -r -f -a "kubernetes\t''
directory\t''"
complete -c gitopsd -n "__fish_gitopsd_using_subcommand init" -l name -d 'The environment\'s name (default: the folder\'s last component)' -r
complete -c gitopsd -n "__fish_gitopsd_using_subcommand init" -l namespace -d 'Kubernetes: the namespace for objects without one, made if missing (default: the environment\'s name)' -r
complete -c gitopsd -n "__fish_gitopsd_using_subcommand init" -l kubeconfig -d 'Kubernetes: the kubeconfig file (default: in-cluster, KUBECONFIG or ~/.kube/config)' -r -F
complete -c gitopsd -n "__fish_gitopsd_using_subcommand init" -l live -d 'Directory: the live folder (default: /srv/hydrated/NAME)' -r -F
complete -c gitopsd -n "__fish_gitopsd_using_subcommand init" -l config -d 'Configuration file' -r -F
complete -c gitopsd -n "__fish_gitopsd_using_subcommand init" -l log-format -d 'Log format; `text` is coloured on a terminal' -r -f -a "text\t''
json\t''"
complete -c gitopsd -n "__fish_gitopsd_using_subcommand init" -s h -l help -d 'Print help'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand status" -l env -d 'Only this environment' -r
complete -c gitopsd -n "__fish_gitopsd_using_subcommand status" -l config -d 'Configuration file' -r -F
complete -c gitopsd -n "__fish_gitopsd_using_subcommand status" -l log-format -d 'Log format; `text` is coloured on a terminal' -r -f -a "text\t''
json\t''"
complete -c gitopsd -n "__fish_gitopsd_using_subcommand status" -s h -l help -d 'Print help'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand approve" -l env -r
complete -c gitopsd -n "__fish_gitopsd_using_subcommand approve" -l config -d 'Configuration file' -r -F
complete -c gitopsd -n "__fish_gitopsd_using_subcommand approve" -l log-format -d 'Log format; `text` is coloured on a terminal' -r -f -a "text\t''
json\t''"
complete -c gitopsd -n "__fish_gitopsd_using_subcommand approve" -s h -l help -d 'Print help'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand pause" -l env -r
complete -c gitopsd -n "__fish_gitopsd_using_subcommand pause" -l config -d 'Configuration file' -r -F
complete -c gitopsd -n "__fish_gitopsd_using_subcommand pause" -l log-format -d 'Log format; `text` is coloured on a terminal' -r -f -a "text\t''
json\t''"
complete -c gitopsd -n "__fish_gitopsd_using_subcommand pause" -s h -l help -d 'Print help'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand retry" -l env -r
complete -c gitopsd -n "__fish_gitopsd_using_subcommand retry" -l config -d 'Configuration file' -r -F
complete -c gitopsd -n "__fish_gitopsd_using_subcommand retry" -l log-format -d 'Log format; `text` is coloured on a terminal' -r -f -a "text\t''
json\t''"
complete -c gitopsd -n "__fish_gitopsd_using_subcommand retry" -s h -l help -d 'Print help'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand resume" -l env -r
complete -c gitopsd -n "__fish_gitopsd_using_subcommand resume" -l config -d 'Configuration file' -r -F
complete -c gitopsd -n "__fish_gitopsd_using_subcommand resume" -l log-format -d 'Log format; `text` is coloured on a terminal' -r -f -a "text\t''
json\t''"
complete -c gitopsd -n "__fish_gitopsd_using_subcommand resume" -s h -l help -d 'Print help'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand rollback" -l env -r
complete -c gitopsd -n "__fish_gitopsd_using_subcommand rollback" -l to -r
complete -c gitopsd -n "__fish_gitopsd_using_subcommand rollback" -l config -d 'Configuration file' -r -F
complete -c gitopsd -n "__fish_gitopsd_using_subcommand rollback" -l log-format -d 'Log format; `text` is coloured on a terminal' -r -f -a "text\t''
json\t''"
complete -c gitopsd -n "__fish_gitopsd_using_subcommand rollback" -s h -l help -d 'Print help'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand history" -l env -d 'Only this environment' -r
complete -c gitopsd -n "__fish_gitopsd_using_subcommand history" -l config -d 'Configuration file' -r -F
complete -c gitopsd -n "__fish_gitopsd_using_subcommand history" -l log-format -d 'Log format; `text` is coloured on a terminal' -r -f -a "text\t''
json\t''"
complete -c gitopsd -n "__fish_gitopsd_using_subcommand history" -l stats -d 'Delivery figures instead: deployment frequency, lead time, change failure rate and mean time to restore'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand history" -s h -l help -d 'Print help'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand help; and not __fish_seen_subcommand_from run diff validate init status approve pause retry resume rollback history help" -f -a "run" -d 'Run the reconciler: poll the repository and keep every environment at its branch tip'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand help; and not __fish_seen_subcommand_from run diff validate init status approve pause retry resume rollback history help" -f -a "diff" -d 'Show what would change. Exit 0: no change, 1: changes, 2: error'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand help; and not __fish_seen_subcommand_from run diff validate init status approve pause retry resume rollback history help" -f -a "validate" -d 'Check the configuration and every environment\'s manifests, reporting all problems. Exit 0: valid, 1: problems found, 2: could not check'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand help; and not __fish_seen_subcommand_from run diff validate init status approve pause retry resume rollback history help" -f -a "init" -d 'Write a starting config (to --config) for a repository and one environment, after fetching the branch tip and reading the environment\'s folder. Never overwrites a file'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand help; and not __fish_seen_subcommand_from run diff validate init status approve pause retry resume rollback history help" -f -a "status" -d 'Show each environment\'s current and last healthy revision, the rollout step in flight and failing checks'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand help; and not __fish_seen_subcommand_from run diff validate init status approve pause retry resume rollback history help" -f -a "approve" -d 'Approve a revision in an environment with `approval = "manual"` (asks the running daemon through its API)'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand help; and not __fish_seen_subcommand_from run diff validate init status approve pause retry resume rollback history help" -f -a "pause" -d 'Pause an environment: no new rollout starts, a rollout in flight holds at its step'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand help; and not __fish_seen_subcommand_from run diff validate init status approve pause retry resume rollback history help" -f -a "retry" -d 'Clear the held failure of the branch tip, so the running daemon rolls it out again (after a fix outside git: a missing CRD installed, a quota raised)'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand help; and not __fish_seen_subcommand_from run diff validate init status approve pause retry resume rollback history help" -f -a "resume" -d 'Resume a paused environment, and lift a rollback pin'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand help; and not __fish_seen_subcommand_from run diff validate init status approve pause retry resume rollback history help" -f -a "rollback" -d 'Put an environment back to REV now and keep it there until the next commit or a resume'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand help; and not __fish_seen_subcommand_from run diff validate init status approve pause retry resume rollback history help" -f -a "history" -d 'Print the journal'
complete -c gitopsd -n "__fish_gitopsd_using_subcommand help; and not __fish_seen_subcommand_from run diff validate init status approve pause retry resume rollback history help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
