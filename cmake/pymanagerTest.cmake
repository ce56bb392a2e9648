# pymanager_add_test(): a GoogleTest executable run by CTest with the
# services of a pymanager config up; what pymanager_cc_test (gtest_env/defs.bzl)
# is for Bazel.
#
#   pymanager_add_test(
#     NAME greeter_test
#     SOURCES greeter_test.cc
#     CONFIG integration.json          # relative to the current source folder
#     DATA setup_step.sh               # copied next to the test, as Bazel's data
#     DEPENDS greeter                  # targets the config runs, built with the test
#     LIBRARIES PkgConfig::httplib)    # the test's own dependencies
#
# The test links pymanager::gtest_main (NO_MAIN: pymanager::gtest_env only;
# your main() calls pymanager::testing::register_environment(&argc, argv)),
# and CTest runs it as `NAME --pymanager_config=CONFIG ARGS...`, with
# PYMANAGER_KEEPER set to the keeper program (pymanager::keeper), in the
# current build folder, where add_executable puts the services and CONFIG and
# DATA are copied (under their paths relative to the current source folder):
# paths in the config are relative to it, as they are to the runfiles root
# under Bazel. WORKING_DIRECTORY: another folder (the config is then passed
# as the copy's absolute path).
#
# Other arguments: ARGS (more arguments for the test), ENVIRONMENT (NAME=VALUE
# items for the test's environment), LABELS, TIMEOUT (seconds).
# Returns nothing; the test target and the CTest test are both called NAME.
function(pymanager_add_test)
  cmake_parse_arguments(PARSE_ARGV 0 arg "NO_MAIN" "NAME;CONFIG;WORKING_DIRECTORY;TIMEOUT"
                        "SOURCES;DATA;DEPENDS;LIBRARIES;ARGS;ENVIRONMENT;LABELS")
  if(arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "pymanager_add_test: unknown arguments: ${arg_UNPARSED_ARGUMENTS}")
  endif()
  foreach(required NAME SOURCES CONFIG)
    if(NOT arg_${required})
      message(FATAL_ERROR "pymanager_add_test: ${required} is required")
    endif()
  endforeach()
  get_filename_component(config_source "${arg_CONFIG}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
  if(NOT EXISTS "${config_source}")
    message(FATAL_ERROR "pymanager_add_test(${arg_NAME}): CONFIG ${arg_CONFIG}: no such file (${config_source})")
  endif()
  if(NOT TARGET pymanager::keeper)
    message(FATAL_ERROR "pymanager_add_test: no pymanager::keeper target (find_package(pymanager CONFIG REQUIRED) first)")
  endif()
  if(NOT TARGET pymanager::gtest_main)
    message(FATAL_ERROR "pymanager_add_test: pymanager was built without its GoogleTest environment "
                        "(PYMANAGER_BUILD_GTEST_ENV=OFF)")
  endif()

  add_executable(${arg_NAME} ${arg_SOURCES})
  if(arg_NO_MAIN)
    target_link_libraries(${arg_NAME} PRIVATE pymanager::gtest_env ${arg_LIBRARIES})
  else()
    target_link_libraries(${arg_NAME} PRIVATE pymanager::gtest_main ${arg_LIBRARIES})
  endif()
  if(arg_DEPENDS)
    add_dependencies(${arg_NAME} ${arg_DEPENDS})
  endif()
  # In pymanager's own tree the keeper is built here too (installed, it is imported).
  get_target_property(keeper pymanager::keeper ALIASED_TARGET)
  if(keeper)
    add_dependencies(${arg_NAME} ${keeper})
  endif()

  # CONFIG and DATA: copied into the build folder under the same relative
  # path (a file outside the source folder: under its name), kept up to date
  # at each configure (configure_file COPYONLY keeps the file mode), as
  # Bazel puts them in the runfiles.
  unset(config)
  foreach(item IN LISTS arg_CONFIG arg_DATA)
    get_filename_component(source "${item}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    file(RELATIVE_PATH relative "${CMAKE_CURRENT_SOURCE_DIR}" "${source}")
    if(relative MATCHES "^\\.\\./")
      get_filename_component(relative "${source}" NAME)
    endif()
    configure_file("${source}" "${CMAKE_CURRENT_BINARY_DIR}/${relative}" COPYONLY)
    if(NOT DEFINED config)
      set(config "${relative}")
    endif()
  endforeach()

  # The config is passed relative to the test's folder, as Bazel's rootpath;
  # with a WORKING_DIRECTORY of your own, as an absolute path.
  set(directory "${CMAKE_CURRENT_BINARY_DIR}")
  if(arg_WORKING_DIRECTORY)
    get_filename_component(directory "${arg_WORKING_DIRECTORY}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_BINARY_DIR}")
    set(config "${CMAKE_CURRENT_BINARY_DIR}/${config}")
  endif()
  add_test(NAME ${arg_NAME}
           COMMAND ${arg_NAME} "--pymanager_config=${config}" ${arg_ARGS}
           WORKING_DIRECTORY "${directory}")
  set_property(TEST ${arg_NAME} PROPERTY ENVIRONMENT
               "PYMANAGER_KEEPER=$<TARGET_FILE:pymanager::keeper>" ${arg_ENVIRONMENT})
  if(arg_LABELS)
    set_property(TEST ${arg_NAME} PROPERTY LABELS ${arg_LABELS})
  endif()
  if(arg_TIMEOUT)
    set_property(TEST ${arg_NAME} PROPERTY TIMEOUT ${arg_TIMEOUT})
  endif()
endfunction()
